import sys

from contrail.client.cli.main import main

sys.exit(main())
