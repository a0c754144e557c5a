import sys

from modalprompt.cli import main

sys.exit(main())
