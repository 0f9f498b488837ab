import sys

from space.bake import main

sys.exit(main())
