from gemini_graphql.cli import main

raise SystemExit(main())
