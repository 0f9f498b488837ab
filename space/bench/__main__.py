import sys

from space.bench import main

sys.exit(main())
