"""python -m nim_operator"""

from nim_operator.cli import main

raise SystemExit(main())
