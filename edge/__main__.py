"""``python -m edge``: run one SIP edge node (see `edge.runtime.main` for the options)."""

from edge.runtime.main import main

raise SystemExit(main())
