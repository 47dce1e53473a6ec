"""Who the user is: one-time codes, passwords, access tokens."""
