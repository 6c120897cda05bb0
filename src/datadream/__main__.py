from datadream.cli import main

raise SystemExit(main())
