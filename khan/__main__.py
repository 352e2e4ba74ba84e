from khan.cli import main

raise SystemExit(main())
