output "instance_ids" {
  description = "IDs of the fleet's spot instances."
  value       = aws_instance.fleet[*].id
}

output "launch_template_id" {
  description = "ID of the hibernation-ready launch template."
  value       = aws_launch_template.fleet.id
}

output "launch_template_version" {
  description = "Version of the launch template the instances were launched from."
  value       = aws_launch_template.fleet.latest_version
}

output "queue_url" {
  description = "URL of the SQS queue receiving the fleet's interruption warnings and rebalance recommendations (with drills also its state changes and spotguard's decisions): `spotguard fleet watch --queue`."
  value       = aws_sqs_queue.ec2_events.id
}

output "queue_arn" {
  description = "ARN of that SQS queue."
  value       = aws_sqs_queue.ec2_events.arn
}

output "role_arn" {
  description = "ARN of the agent's IAM role (stop itself; with drills, publish its decisions)."
  value       = aws_iam_role.agent.arn
}

output "instance_profile_name" {
  description = "Name of the instance profile carrying that role."
  value       = aws_iam_instance_profile.agent.name
}

output "security_group_id" {
  description = "ID of the fleet's security group (no ingress); add rules to it to reach the instances."
  value       = aws_security_group.agent.id
}

output "root_volume_gib" {
  description = "Size of each root volume: room for the hibernation swap file plus os_disk_gib."
  value       = local.root_volume_gib
}

output "swap_mb" {
  description = "Swap file size in MiB handed to cloud-init for the hibernation image."
  value       = local.swap_mb
}

output "drill_template_id" {
  description = "ID of the AWS FIS experiment template that interrupts the fleet: `spotguard fleet drill --template`. null without drills."
  value       = one(aws_fis_experiment_template.drill[*].id)
}

output "drill_role_arn" {
  description = "ARN of the role FIS assumes for a drill. null without drills."
  value       = one(aws_iam_role.fis[*].arn)
}
