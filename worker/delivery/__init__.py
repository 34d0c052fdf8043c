"""Report delivery: email, Slack and signed webhooks, one delivery log row per report and channel."""
