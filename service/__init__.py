"""The Anytime HTTP service: loads exported model directories and serves them under deadlines."""
