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

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

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
    config_toml      = local.config_toml
  })
  # cloud-init takes gzipped user data as it is; EC2's 16 KB are counted before base64.
  user_data_gzip = base64gzip(local.user_data)

  tags = merge(var.tags, { "spotguard:fleet" = var.name })

  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  # Drills: the agents report their decisions to the account's default bus, where EC2's own
  # events arrive too, so one set of rules carries both to the queue.
  event_bus_arn = "arn:${local.partition}:events:${local.region}:${local.account_id}:event-bus/default"
  config_toml = var.drills ? join("\n", [
    "[fleet]",
    "event_bus = \"default\"",
    var.config_toml,
  ]) : var.config_toml

  # The one source of the rule patterns: spotguard's tests match events against this file too.
  # Each rule is narrowed to the fleet's instances. Without drills, only EC2's notices.
  event_patterns = jsondecode(file("${path.module}/event-patterns.json"))
  event_rules = {
    for name, pattern in local.event_patterns : name => merge(pattern, {
      detail = merge(try(pattern.detail, {}), { "instance-id" = aws_instance.fleet[*].id })
    }) if var.drills || contains(["interruption", "rebalance"], name)
  }
}

# --- Instance identity: stop (hibernate) itself and, with drills, report to the bus. ---

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
    Statement = concat([
      {
        Sid      = "StopOnlyItself"
        Effect   = "Allow"
        Action   = "ec2:StopInstances"
        Resource = "arn:${data.aws_partition.current.partition}:ec2:*:*:instance/*"
        Condition = {
          ArnLike = {
            "ec2:SourceInstanceARN" = "arn:${local.partition}:ec2:*:*:instance/$${ec2:InstanceId}"
          }
        }
      },
      # spotguard calls nothing else: no DescribeInstances (the metadata service tells it
      # everything about its own instance). With drills it publishes its decisions, as source
      # "spotguard" only, on the default bus only.
      ], var.drills ? [{
        Sid       = "PublishDecisions"
        Effect    = "Allow"
        Action    = "events:PutEvents"
        Resource  = local.event_bus_arn
        Condition = { StringEquals = { "events:source" = "spotguard" } }
    }] : [])
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
  user_data              = local.user_data_gzip

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
      condition     = length(local.user_data_gzip) <= 21848 # 16384 bytes, base64-encoded
      error_message = "The gzipped user data is about ${floor(length(local.user_data_gzip) * 3 / 4)} bytes; EC2 accepts at most 16384."
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

resource "aws_cloudwatch_event_rule" "fleet" {
  for_each = local.event_rules

  name          = "${var.name}-${each.key}"
  description   = "${join(", ", each.value["detail-type"])} of the ${var.name} fleet"
  event_pattern = jsonencode(each.value)
  tags          = local.tags
}

resource "aws_cloudwatch_event_target" "fleet" {
  for_each = aws_cloudwatch_event_rule.fleet

  rule      = each.value.name
  target_id = "sqs"
  arn       = aws_sqs_queue.ec2_events.arn
}

# Before drills the rules carried EC2's two notices only, under another name.
moved {
  from = aws_cloudwatch_event_rule.ec2
  to   = aws_cloudwatch_event_rule.fleet
}

moved {
  from = aws_cloudwatch_event_target.ec2
  to   = aws_cloudwatch_event_target.fleet
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
        ArnEquals = { "aws:SourceArn" = [for rule in aws_cloudwatch_event_rule.fleet : rule.arn] }
      }
    }]
  })
}

# --- Drills: AWS FIS sends real spot interruptions to the fleet's tagged instances. ---

resource "aws_iam_role" "fis" {
  count = var.drills ? 1 : 0

  name        = "${var.name}-fis"
  description = "AWS FIS drills of the ${var.name} fleet: interrupts its spot instances only."
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "fis.amazonaws.com" }
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "fis" {
  count = var.drills ? 1 : 0

  name = "interrupt-only-this-fleet"
  role = aws_iam_role.fis[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "InterruptOnlyThisFleet"
        Effect    = "Allow"
        Action    = "ec2:SendSpotInstanceInterruptions"
        Resource  = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
        Condition = { StringEquals = { "aws:ResourceTag/spotguard:fleet" = var.name } }
      },
      {
        # FIS resolves the tag target with it; it has no resource-level permissions.
        Sid      = "ResolveTargets"
        Effect   = "Allow"
        Action   = "ec2:DescribeInstances"
        Resource = "*"
      },
    ]
  })
}

resource "aws_fis_experiment_template" "drill" {
  count = var.drills ? 1 : 0

  description = "spotguard ${var.name}: interrupt ${var.drill_selection} of the fleet's running spot instances, ${var.drill_duration_before_interruption} ahead"
  role_arn    = aws_iam_role.fis[0].arn

  stop_condition {
    source = var.drill_stop_alarm_arn == null ? "none" : "aws:cloudwatch:alarm"
    value  = var.drill_stop_alarm_arn
  }

  action {
    name      = "interrupt"
    action_id = "aws:ec2:send-spot-instance-interruptions"

    parameter {
      key   = "durationBeforeInterruption"
      value = var.drill_duration_before_interruption
    }

    target {
      key   = "SpotInstances"
      value = "fleet"
    }
  }

  target {
    name           = "fleet"
    resource_type  = "aws:ec2:spot-instance"
    selection_mode = var.drill_selection

    resource_tag {
      key   = "spotguard:fleet"
      value = var.name
    }

    filter {
      path   = "State.Name"
      values = ["running"]
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-drill" })
}
