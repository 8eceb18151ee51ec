# Offline checks of what the module asks EC2 for: `terraform test` with a mocked AWS provider.

mock_provider "aws" {
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
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
    ] : strcontains(base64decode(aws_launch_template.fleet.user_data), line)])
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
    ] : strcontains(base64decode(aws_launch_template.fleet.user_data), line)])
    error_message = "cloud-init/user-data.yaml must render with the module's template variables."
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
    condition     = [for s in jsondecode(aws_iam_role_policy.agent.policy).Statement : s.Action] == ["ec2:StopInstances", "ec2:DescribeInstances"]
    error_message = "The agent's role must allow StopInstances and DescribeInstances and nothing else."
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
    target = aws_cloudwatch_event_rule.ec2["interruption"]
    values = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-interruption" }
  }
  override_resource {
    target = aws_cloudwatch_event_rule.ec2["rebalance"]
    values = { arn = "arn:aws:events:us-east-1:123456789012:rule/spotguard-ci-rebalance" }
  }

  assert {
    condition = {
      for k, r in aws_cloudwatch_event_rule.ec2 : k => jsondecode(r.event_pattern)
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
    }
    error_message = "There must be one rule per EC2 notice, matching the fleet's instances."
  }
  assert {
    condition     = alltrue([for t in aws_cloudwatch_event_target.ec2 : t.arn == aws_sqs_queue.ec2_events.arn])
    error_message = "Both rules must deliver to the queue."
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
          ]
        }
      }
    }
    error_message = "Only the fleet's two rules may send to the queue."
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
    name               = "sg-fleet"
    instance_count     = 0
    hibernate_mode     = "suspend"
    egress_cidr_blocks = ["not-a-cidr"]
    spotguard_lock     = "spotguard\n--index-url http://elsewhere"
    spotguard_source   = "spotguard==0.1.0"
  }

  expect_failures = [
    var.name,
    var.instance_count,
    var.hibernate_mode,
    var.egress_cidr_blocks,
    var.spotguard_lock,
    var.spotguard_source,
  ]
}
