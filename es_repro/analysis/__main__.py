import sys

from es_repro.analysis.cli import main

sys.exit(main())
