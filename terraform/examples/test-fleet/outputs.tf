output "instance_ids" {
  description = "The fleet's spot instances."
  value       = module.fleet.instance_ids
}

output "launch_template_id" {
  description = "The hibernation-ready launch template."
  value       = module.fleet.launch_template_id
}

output "queue_url" {
  description = "SQS queue with EC2's interruption warnings and rebalance recommendations for the fleet."
  value       = module.fleet.queue_url
}

output "role_arn" {
  description = "The agent's IAM role."
  value       = module.fleet.role_arn
}
