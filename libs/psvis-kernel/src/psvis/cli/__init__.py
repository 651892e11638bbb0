"""The psvis command line."""
