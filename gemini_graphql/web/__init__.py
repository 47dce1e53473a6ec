"""Plain HTTP around the GraphQL endpoint: routes and middleware."""
