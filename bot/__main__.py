"""`python -m bot`: the admin command line (bot/admin.py)."""

import sys

from bot.admin import main

sys.exit(main())
