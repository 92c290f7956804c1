import sys

from growlength.cli import main

sys.exit(main())
