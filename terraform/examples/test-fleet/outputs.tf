output "instance_ids" {
  description = "The fleet's spot instances."
  value       = module.fleet.instance_ids
}

output "launch_template_id" {
  description = "The hibernation-ready launch template."
  value       = module.fleet.launch_template_id
}

output "queue_url" {
  description = "SQS queue with EC2's notices and state changes for the fleet, and the agents' decisions."
  value       = module.fleet.queue_url
}

output "role_arn" {
  description = "The agent's IAM role."
  value       = module.fleet.role_arn
}

output "drill_template_id" {
  description = "AWS FIS experiment template interrupting the fleet: spotguard fleet drill --template."
  value       = module.fleet.drill_template_id
}

output "fleet_name" {
  description = "Name of the fleet: the value of every resource's spotguard:fleet tag."
  value       = var.name
}
