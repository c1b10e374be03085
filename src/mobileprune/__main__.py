from mobileprune.cli import main

raise SystemExit(main())
