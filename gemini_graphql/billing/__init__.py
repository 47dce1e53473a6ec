"""The Pro plan: Stripe Checkout, signed webhooks, and the tier they decide."""
