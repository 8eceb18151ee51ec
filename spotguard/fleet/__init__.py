"""Fleet drills: the agents report their decisions to EventBridge; `spotguard fleet watch`
joins them with EC2's own events from the fleet's SQS queue, instance by instance."""
