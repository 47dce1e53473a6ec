"""Chatrooms, messages and the daily message quota."""
