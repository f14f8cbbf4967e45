"""`python -m agent --name N ...`: the agent daemon (same as `baton agent`)."""
import sys

from agent.daemon import main

sys.exit(main())
