# Offline checks of what the module asks EC2 for: `terraform test` with a mocked AWS provider.

mock_provider "aws" {
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_ec2_instance_type" {
    defaults = { memory_size = 16384, hibernation_supported = true }
  }
  # The provider validates these attributes where they are used, so mocks must look real.
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/spotguard-ci-agent" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/spotguard-ci-agent" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0", latest_version = 1 }
  }
  mock_resource "aws_sqs_queue" {
    defaults = {
      arn = "arn:aws:sqs:us-east-1:123456789012:spotguard-ci-ec2-events"
      id  = "https://sqs.us-east-1.amazonaws.com/123456789012/spotguard-ci-ec2-events"
    }
  }
  mock_resource "aws_cloudwatch_event_rule" {
    defaults = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci" }
  }
  mock_resource "aws_fis_experiment_template" {
    defaults = { id = "EXT1a2b3c4d5e6f7" }
  }
}

variables {
  name               = "spotguard-ci"
  instance_count     = 3
  ami_id             = "ami-0123456789abcdef0"
  vpc_id             = "vpc-0123456789abcdef0"
  subnet_ids         = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]
  memory_mib         = 8192
  user_data_template = "./tests/fixtures/user-data.yaml"
  spotguard_lock     = "spotguard==0.1.0 --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000\nboto3==1.35.0 --hash=sha256:1111111111111111111111111111111111111111111111111111111111111111\n"
}

run "launch_template_is_hibernation_ready" {
  command = plan

  assert {
    condition     = aws_launch_template.fleet.hibernation_options[0].configured
    error_message = "The launch template must configure hibernation."
  }
  assert {
    condition     = aws_launch_template.fleet.metadata_options[0].http_tokens == "required"
    error_message = "IMDSv2 must be required (http_tokens = required)."
  }
  assert {
    condition     = aws_launch_template.fleet.metadata_options[0].http_endpoint == "enabled"
    error_message = "The metadata endpoint must be enabled."
  }
  assert {
    condition     = aws_launch_template.fleet.metadata_options[0].http_put_response_hop_limit == 1
    error_message = "The hop limit must default to 1."
  }
  assert {
    condition     = aws_launch_template.fleet.block_device_mappings[0].ebs[0].encrypted == "true"
    error_message = "The root volume must be encrypted."
  }
  assert {
    # 8192 MiB of RAM => an 8 GiB swap file + 10 GiB for the OS.
    condition     = aws_launch_template.fleet.block_device_mappings[0].ebs[0].volume_size == 18
    error_message = "The root volume must hold RAM + OS: expected 18 GiB."
  }
  assert {
    condition     = aws_launch_template.fleet.block_device_mappings[0].device_name == "/dev/xvda"
    error_message = "The mapping must be the AMI's root device."
  }
  assert {
    condition = (
      aws_launch_template.fleet.instance_market_options[0].market_type == "spot" &&
      aws_launch_template.fleet.instance_market_options[0].spot_options[0].spot_instance_type == "persistent" &&
      aws_launch_template.fleet.instance_market_options[0].spot_options[0].instance_interruption_behavior == "hibernate"
    )
    error_message = "Instances must be persistent spot requests that hibernate on interruption."
  }
  assert {
    condition     = length(data.aws_ec2_instance_type.this) == 0
    error_message = "With memory_mib given, DescribeInstanceTypes must not be called."
  }
}

run "user_data_gets_the_agreed_template_variables" {
  command = plan

  variables {
    spotguard_source = "https://pypi.example.invalid/simple"
    hibernate_mode   = "local"
    imds_url         = "http://127.0.0.1:8080"
    config_toml      = "[agent]\npoll_interval = 2"
  }

  assert {
    condition = alltrue([for line in [
      "mode = \"local\"",
      "url = \"http://127.0.0.1:8080\"",
      "poll_interval = 2",
      "\"8192M\"",
      "\"https://pypi.example.invalid/simple\"",
      "spotguard==0.1.0 --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000\\nboto3==1.35.0",
    ] : strcontains(local.user_data, line)])
    error_message = "The user data must render spotguard_source, spotguard_lock, hibernate_mode, imds_url, swap_mb and config_toml."
  }
}

run "renders_the_repository_cloud_init" {
  command = plan

  variables {
    user_data_template = null # the module's default: cloud-init/user-data.yaml
    spotguard_source   = "/opt/wheels"
  }

  assert {
    condition = alltrue([for line in [
      "#cloud-config",
      "\"/opt/wheels\"",
      "--require-hashes",
      "\"8192\"",
    ] : strcontains(local.user_data, line)])
    error_message = "cloud-init/user-data.yaml must render with the module's template variables."
  }

  assert {
    condition     = aws_launch_template.fleet.user_data == base64gzip(local.user_data)
    error_message = "The launch template must carry the rendered user data, gzipped."
  }
}

run "fleet_launches_every_instance_from_the_template" {
  command = apply

  assert {
    condition     = length(aws_instance.fleet) == 3
    error_message = "instance_count instances must be launched."
  }
  assert {
    condition     = alltrue([for i in aws_instance.fleet : i.launch_template[0].id == aws_launch_template.fleet.id])
    error_message = "Every instance must come from the launch template."
  }
  assert {
    condition     = [for i in aws_instance.fleet : i.subnet_id] == ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2", "subnet-0aaaaaaaaaaaaaaa1"]
    error_message = "Instances must be spread over the subnets in order."
  }
  assert {
    condition     = output.instance_ids == aws_instance.fleet[*].id
    error_message = "instance_ids must list the fleet."
  }
}

run "agent_may_stop_only_its_own_instance" {
  command = apply

  assert {
    condition = jsondecode(aws_iam_role_policy.agent.policy).Statement[0] == {
      Sid      = "StopOnlyItself"
      Effect   = "Allow"
      Action   = "ec2:StopInstances"
      Resource = "arn:aws:ec2:*:*:instance/*"
      Condition = {
        ArnLike = { "ec2:SourceInstanceARN" = "arn:aws:ec2:*:*:instance/$${ec2:InstanceId}" }
      }
    }
    error_message = "StopInstances must be allowed only where the caller's instance is the target."
  }
  assert {
    # spotguard never calls DescribeInstances: the metadata service describes its instance.
    condition     = [for s in jsondecode(aws_iam_role_policy.agent.policy).Statement : s.Action] == ["ec2:StopInstances", "events:PutEvents"]
    error_message = "The agent's role must allow StopInstances and (drills) PutEvents and nothing else."
  }
  assert {
    condition = jsondecode(aws_iam_role_policy.agent.policy).Statement[1] == {
      Sid       = "PublishDecisions"
      Effect    = "Allow"
      Action    = "events:PutEvents"
      Resource  = "arn:aws:events:us-east-1:123456789012:event-bus/default"
      Condition = { StringEquals = { "events:source" = "spotguard" } }
    }
    error_message = "PutEvents must be allowed on the default bus only, as source spotguard only."
  }
  assert {
    condition     = jsondecode(aws_iam_role.agent.assume_role_policy).Statement[0].Principal.Service == "ec2.amazonaws.com"
    error_message = "Only EC2 may assume the agent's role."
  }
  assert {
    condition     = aws_launch_template.fleet.iam_instance_profile[0].arn == aws_iam_instance_profile.agent.arn
    error_message = "Instances must carry the agent's instance profile."
  }
}

run "events_reach_an_encrypted_queue_only_from_the_fleet_rules" {
  command = apply
  # A state of its own, so the rules are created here, with these overrides.
  state_key = "events"

  override_resource {
    target = aws_cloudwatch_event_rule.fleet["interruption"]
    values = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-interruption" }
  }
  override_resource {
    target = aws_cloudwatch_event_rule.fleet["rebalance"]
    values = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-rebalance" }
  }
  override_resource {
    target = aws_cloudwatch_event_rule.fleet["state-change"]
    values = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-state-change" }
  }
  override_resource {
    target = aws_cloudwatch_event_rule.fleet["spotguard"]
    values = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-spotguard" }
  }

  assert {
    condition = {
      for k, r in aws_cloudwatch_event_rule.fleet : k => jsondecode(r.event_pattern)
      } == {
      interruption = {
        source        = ["aws.ec2"]
        "detail-type" = ["EC2 Spot Instance Interruption Warning"]
        detail        = { "instance-id" = aws_instance.fleet[*].id }
      }
      rebalance = {
        source        = ["aws.ec2"]
        "detail-type" = ["EC2 Instance Rebalance Recommendation"]
        detail        = { "instance-id" = aws_instance.fleet[*].id }
      }
      state-change = {
        source        = ["aws.ec2"]
        "detail-type" = ["EC2 Instance State-change Notification"]
        detail = {
          state         = ["pending", "running", "stopping", "stopped"]
          "instance-id" = aws_instance.fleet[*].id
        }
      }
      spotguard = {
        source = ["spotguard"]
        "detail-type" = [
          "spotguard Notice Seen",
          "spotguard Reclaim Done",
          "spotguard Hibernation Issued",
          "spotguard Graceful Path",
          "spotguard Resumed",
        ]
        detail = { "instance-id" = aws_instance.fleet[*].id }
      }
    }
    error_message = "The rules must carry EC2's notices and state changes and spotguard's decisions of the fleet's instances."
  }
  assert {
    condition     = alltrue([for t in aws_cloudwatch_event_target.fleet : t.arn == aws_sqs_queue.ec2_events.arn]) && length(aws_cloudwatch_event_target.fleet) == 4
    error_message = "Every rule must deliver to the queue."
  }
  assert {
    condition     = aws_sqs_queue.ec2_events.sqs_managed_sse_enabled
    error_message = "The queue must be encrypted at rest."
  }
  assert {
    condition = jsondecode(aws_sqs_queue_policy.ec2_events.policy).Statement[0] == {
      Sid       = "EventBridgeRulesOfThisFleet"
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.ec2_events.arn
      Condition = {
        ArnEquals = {
          "aws:SourceArn" = [
            "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-interruption",
            "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-rebalance",
            "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-spotguard",
            "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-state-change",
          ]
        }
      }
    }
    error_message = "Only the fleet's rules may send to the queue."
  }
}

run "drill_interrupts_the_tagged_fleet_only" {
  command   = apply
  state_key = "drill"

  variables {
    drill_selection                    = "COUNT(2)"
    drill_duration_before_interruption = "PT5M"
  }

  assert {
    condition = [for a in aws_fis_experiment_template.drill[0].action : {
      action_id  = a.action_id
      parameters = { for p in a.parameter : p.key => p.value }
      targets    = { for t in a.target : t.key => t.value }
      }] == [{
      action_id  = "aws:ec2:send-spot-instance-interruptions"
      parameters = { durationBeforeInterruption = "PT5M" }
      targets    = { SpotInstances = "fleet" }
    }]
    error_message = "The one action must send spot interruptions, durationBeforeInterruption ahead, to the fleet target."
  }
  assert {
    condition = [for t in aws_fis_experiment_template.drill[0].target : {
      name           = t.name
      resource_type  = t.resource_type
      selection_mode = t.selection_mode
      tags           = { for tag in t.resource_tag : tag.key => tag.value }
      by_arn         = length(coalesce(t.resource_arns, [])) > 0
      filters        = { for f in t.filter : f.path => f.values }
      }] == [{
      name           = "fleet"
      resource_type  = "aws:ec2:spot-instance"
      selection_mode = "COUNT(2)"
      tags           = { "spotguard:fleet" = "spotguard-ci" }
      by_arn         = false
      filters        = { "State.Name" = toset(["running"]) }
    }]
    error_message = "The target must be the fleet's spot instances, by tag, with the selection mode asked for."
  }
  assert {
    condition     = [for c in aws_fis_experiment_template.drill[0].stop_condition : c.source] == ["none"]
    error_message = "Without an alarm the drill must have no stop condition."
  }
  assert {
    condition     = aws_fis_experiment_template.drill[0].role_arn == aws_iam_role.fis[0].arn
    error_message = "The drill must run as its own role."
  }
  assert {
    condition = jsondecode(aws_iam_role.fis[0].assume_role_policy).Statement == [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "fis.amazonaws.com" }
      Condition = { StringEquals = { "aws:SourceAccount" = "123456789012" } }
    }]
    error_message = "Only FIS, for this account, may assume the drill role."
  }
  assert {
    condition = jsondecode(aws_iam_role_policy.fis[0].policy).Statement == [
      {
        Sid       = "InterruptOnlyThisFleet"
        Effect    = "Allow"
        Action    = "ec2:SendSpotInstanceInterruptions"
        Resource  = "arn:aws:ec2:us-east-1:123456789012:instance/*"
        Condition = { StringEquals = { "aws:ResourceTag/spotguard:fleet" = "spotguard-ci" } }
      },
      {
        Sid      = "ResolveTargets"
        Effect   = "Allow"
        Action   = "ec2:DescribeInstances"
        Resource = "*"
      },
    ]
    error_message = "The drill role may interrupt only the fleet's instances, and describe instances."
  }
  assert {
    condition     = output.drill_template_id == "EXT1a2b3c4d5e6f7" && startswith(output.queue_url, "https://sqs.")
    error_message = "The template id and the queue URL must be outputs."
  }
  assert {
    condition     = strcontains(local.user_data, "event_bus = \"default\"")
    error_message = "With drills the agents must be told to publish to the default bus."
  }
}

run "drill_stops_on_the_alarm_given" {
  command = plan

  variables {
    drill_stop_alarm_arn = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:fleet-errors"
  }

  assert {
    condition = [for c in aws_fis_experiment_template.drill[0].stop_condition : c] == [{
      source = "aws:cloudwatch:alarm"
      value  = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:fleet-errors"
    }]
    error_message = "The alarm must be the drill's stop condition."
  }
}

run "without_drills_only_the_fleet_and_its_notices" {
  command = plan

  variables {
    drills = false
  }

  assert {
    condition = (
      length(aws_fis_experiment_template.drill) == 0 && length(aws_iam_role.fis) == 0 &&
      toset(keys(aws_cloudwatch_event_rule.fleet)) == toset(["interruption", "rebalance"])
    )
    error_message = "drills = false must leave out the template, its role and the extra rules."
  }
  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.agent.policy).Statement : s.Action] == ["ec2:StopInstances"]
    error_message = "Without drills the agent may only stop itself."
  }
  assert {
    condition     = !strcontains(local.user_data, "[fleet]")
    error_message = "Without drills the agents must not publish."
  }
  assert {
    condition     = output.drill_template_id == null
    error_message = "Without drills there is no template id."
  }
}

run "security_group_has_no_ingress_and_configured_egress" {
  command = plan

  variables {
    egress_cidr_blocks = ["10.0.0.0/8"]
    egress_ports       = [443, 80]
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_egress_rule.agent)) == toset(["10.0.0.0/8:443", "10.0.0.0/8:80"])
    error_message = "Egress must be exactly the configured ranges and ports."
  }
  assert {
    condition     = aws_launch_template.fleet.tags["spotguard:fleet"] == "spotguard-ci"
    error_message = "Resources must carry the fleet tag."
  }
}

run "no_egress_when_none_is_asked_for" {
  command = plan

  variables {
    egress_cidr_blocks = []
  }

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.agent) == 0
    error_message = "An empty egress_cidr_blocks must open nothing."
  }
}

run "memory_comes_from_the_instance_type_when_not_given" {
  command = plan

  variables {
    memory_mib = null
  }

  assert {
    # 16384 MiB from the (mocked) DescribeInstanceTypes => 16 + 10 GiB.
    condition     = aws_launch_template.fleet.block_device_mappings[0].ebs[0].volume_size == 26
    error_message = "The root volume must be sized from the instance type's memory."
  }
}

run "small_instances_get_at_least_4000_mib_of_swap" {
  command = plan

  variables {
    memory_mib = 1024
  }

  assert {
    condition     = output.swap_mb == 4000 && output.root_volume_gib == 14
    error_message = "Swap must be max(RAM, 4000 MiB) and the volume sized for it."
  }
}

run "stop_is_an_allowed_interruption_behavior" {
  command = plan

  variables {
    interruption_behavior = "stop"
    metadata_hop_limit    = 2
  }

  assert {
    condition     = aws_launch_template.fleet.instance_market_options[0].spot_options[0].instance_interruption_behavior == "stop"
    error_message = "interruption_behavior must reach the spot options."
  }
  assert {
    condition     = aws_launch_template.fleet.metadata_options[0].http_put_response_hop_limit == 2
    error_message = "metadata_hop_limit must reach the metadata options."
  }
}

run "rejects_terminate_on_interruption" {
  command = plan

  variables {
    interruption_behavior = "terminate"
  }

  expect_failures = [var.interruption_behavior]
}

run "rejects_ram_beyond_what_ec2_hibernates" {
  command = plan

  variables {
    memory_mib = 200000
  }

  expect_failures = [var.memory_mib]
}

run "rejects_an_instance_type_without_hibernation" {
  command = plan

  variables {
    memory_mib = null
  }

  override_data {
    target = data.aws_ec2_instance_type.this[0]
    values = { memory_size = 4096, hibernation_supported = false }
  }

  expect_failures = [data.aws_ec2_instance_type.this]
}

run "rejects_bad_inputs" {
  command = plan

  variables {
    name                               = "sg-fleet"
    instance_count                     = 0
    hibernate_mode                     = "suspend"
    egress_cidr_blocks                 = ["not-a-cidr"]
    spotguard_lock                     = "spotguard\n--index-url http://elsewhere"
    spotguard_source                   = "spotguard==0.1.0"
    drill_selection                    = "PERCENT(0)"
    drill_duration_before_interruption = "PT1M"
    drill_stop_alarm_arn               = "my-alarm"
  }

  expect_failures = [
    var.name,
    var.instance_count,
    var.hibernate_mode,
    var.egress_cidr_blocks,
    var.spotguard_lock,
    var.spotguard_source,
    var.drill_selection,
    var.drill_duration_before_interruption,
    var.drill_stop_alarm_arn,
  ]
}
