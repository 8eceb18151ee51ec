# A hibernation-ready spot test fleet for spotguard.
#
# Capacity comes from one aws_instance per persistent spot request, all launched from one
# launch template, and not from:
#   - an Auto Scaling group: EC2 does not hibernate instances in an Auto Scaling group;
#   - an EC2 Fleet / Spot Fleet of type maintain: EC2 would hibernate them on interruption,
#     but a user cannot stop (or hibernate) a spot instance that belongs to a fleet, and
#     spotguard's whole job is to call StopInstances(Hibernate=true) on itself in time.
# Only a persistent spot request allows both: interruption behaviour hibernate, and a
# user-initiated hibernation that EC2 resumes from later.

data "aws_partition" "current" {}

# Skipped when memory_mib is given, so tests and local endpoints need no DescribeInstanceTypes.
data "aws_ec2_instance_type" "this" {
  count         = var.memory_mib == null ? 1 : 0
  instance_type = var.instance_type

  lifecycle {
    postcondition {
      condition     = self.hibernation_supported
      error_message = "${var.instance_type} does not support hibernation."
    }
  }
}

locals {
  memory_mib = coalesce(var.memory_mib, one(data.aws_ec2_instance_type.this[*].memory_size))

  # The hibernation image goes to a swap file on the root volume. AWS's hibernation agent
  # sizes it max(RAM, 4000 MiB); the volume holds that on top of the OS.
  swap_mb         = max(local.memory_mib, 4000)
  root_volume_gib = ceil(local.swap_mb / 1024) + var.os_disk_gib

  user_data_template = coalesce(var.user_data_template, "${path.module}/../cloud-init/user-data.yaml")
  user_data = templatefile(local.user_data_template, {
    spotguard_source = var.spotguard_source
    spotguard_lock   = var.spotguard_lock
    hibernate_mode   = var.hibernate_mode
    imds_url         = var.imds_url
    swap_mb          = local.swap_mb
    config_toml      = var.config_toml
  })

  tags = merge(var.tags, { "spotguard:fleet" = var.name })

  # EventBridge detail-type => short name used in resource names.
  ec2_events = {
    interruption = "EC2 Spot Instance Interruption Warning"
    rebalance    = "EC2 Instance Rebalance Recommendation"
  }
}

# --- Instance identity: stop (hibernate) itself, describe instances, nothing more. ---

resource "aws_iam_role" "agent" {
  name        = "${var.name}-agent"
  description = "spotguard agent on the ${var.name} fleet: hibernates its own instance."
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "ec2.amazonaws.com" }
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "agent" {
  name = "stop-only-itself"
  role = aws_iam_role.agent.id
  # ec2:SourceInstanceARN is the instance whose role credentials sign the request and
  # ${ec2:InstanceId} the instance the request acts on: they match only when an instance
  # stops itself (the pattern of AWS's own managed policy AWSEC2VssSnapshotPolicy).
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "StopOnlyItself"
        Effect   = "Allow"
        Action   = "ec2:StopInstances"
        Resource = "arn:${data.aws_partition.current.partition}:ec2:*:*:instance/*"
        Condition = {
          ArnLike = {
            "ec2:SourceInstanceARN" = "arn:${data.aws_partition.current.partition}:ec2:*:*:instance/$${ec2:InstanceId}"
          }
        }
      },
      {
        # DescribeInstances has no resource-level permissions: "*" is the only resource.
        Sid      = "DescribeInstances"
        Effect   = "Allow"
        Action   = "ec2:DescribeInstances"
        Resource = "*"
      },
    ]
  })
}

resource "aws_iam_instance_profile" "agent" {
  name = "${var.name}-agent"
  role = aws_iam_role.agent.name
  tags = local.tags
}

# --- Network: no ingress; egress only where the agent must reach (pip, the EC2 API). ---

resource "aws_security_group" "agent" {
  name_prefix = "${var.name}-"
  description = "spotguard ${var.name} fleet: no ingress, egress as configured"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "agent" {
  for_each = {
    for pair in setproduct(var.egress_cidr_blocks, var.egress_ports) : "${pair[0]}:${pair[1]}" => pair
  }

  security_group_id = aws_security_group.agent.id
  description       = "TCP ${each.value[1]} to ${each.value[0]}"
  ip_protocol       = "tcp"
  cidr_ipv4         = each.value[0]
  from_port         = each.value[1]
  to_port           = each.value[1]
  tags              = local.tags
}

# --- What every instance is launched with. ---

resource "aws_launch_template" "fleet" {
  name_prefix            = "${var.name}-"
  description            = "spotguard ${var.name}: hibernation-ready persistent spot instance"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  vpc_security_group_ids = [aws_security_group.agent.id]
  user_data              = base64encode(local.user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.agent.arn
  }

  hibernation_options {
    configured = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = var.metadata_hop_limit
    instance_metadata_tags      = "disabled"
  }

  # Hibernation needs an encrypted EBS root volume large enough for RAM + OS.
  block_device_mappings {
    device_name = var.root_device_name

    ebs {
      volume_size           = local.root_volume_gib
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_id
      delete_on_termination = true
    }
  }

  instance_market_options {
    market_type = "spot"

    spot_options {
      spot_instance_type             = "persistent"
      instance_interruption_behavior = var.interruption_behavior
      max_price                      = var.spot_max_price
    }
  }

  dynamic "tag_specifications" {
    for_each = toset(["instance", "volume", "network-interface", "spot-instances-request"])

    content {
      resource_type = tag_specifications.value
      tags          = local.tags
    }
  }

  tags = local.tags

  lifecycle {
    precondition {
      condition     = local.memory_mib <= 153600
      error_message = "${var.instance_type} has ${local.memory_mib} MiB of RAM; EC2 hibernates at most 150 GiB."
    }
    precondition {
      condition     = length(local.user_data) <= 16384
      error_message = "The rendered user data is ${length(local.user_data)} bytes; EC2 accepts at most 16384."
    }
  }
}

resource "aws_instance" "fleet" {
  count     = var.instance_count
  subnet_id = var.subnet_ids[count.index % length(var.subnet_ids)]

  # Everything else (spot market options, hibernation, IMDSv2, the encrypted root volume,
  # the instance profile) comes from the template, so an instance launched by hand from
  # it is just as ready.
  launch_template {
    id      = aws_launch_template.fleet.id
    version = aws_launch_template.fleet.latest_version
  }

  tags = merge(local.tags, { Name = "${var.name}-${count.index}" })
}

# --- What EC2 announced, for comparing with what the agents saw. ---

resource "aws_sqs_queue" "ec2_events" {
  name                      = "${var.name}-ec2-events"
  sqs_managed_sse_enabled   = true
  message_retention_seconds = 1209600
  tags                      = local.tags
}

resource "aws_cloudwatch_event_rule" "ec2" {
  for_each = local.ec2_events

  name        = "${var.name}-${each.key}"
  description = "${each.value} for the ${var.name} fleet"
  event_pattern = jsonencode({
    source        = ["aws.ec2"]
    "detail-type" = [each.value]
    detail        = { "instance-id" = aws_instance.fleet[*].id }
  })
  tags = local.tags
}

resource "aws_cloudwatch_event_target" "ec2" {
  for_each = aws_cloudwatch_event_rule.ec2

  rule      = each.value.name
  target_id = "sqs"
  arn       = aws_sqs_queue.ec2_events.arn
}

resource "aws_sqs_queue_policy" "ec2_events" {
  queue_url = aws_sqs_queue.ec2_events.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EventBridgeRulesOfThisFleet"
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.ec2_events.arn
      Condition = {
        ArnEquals = { "aws:SourceArn" = [for rule in aws_cloudwatch_event_rule.ec2 : rule.arn] }
      }
    }]
  })
}
