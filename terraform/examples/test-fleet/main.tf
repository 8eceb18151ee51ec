# A spotguard test fleet in the default VPC. Point `endpoint` at a local server (moto) to
# run it without AWS: every API the module and this example call is redirected there.

locals {
  local_endpoint = var.endpoint != null
}

provider "aws" {
  region = var.region

  # Against a local endpoint there are no real credentials, account or metadata service.
  skip_credentials_validation = local.local_endpoint
  skip_requesting_account_id  = local.local_endpoint
  skip_metadata_api_check     = local.local_endpoint
  skip_region_validation      = local.local_endpoint

  # null leaves a service on its AWS endpoint.
  endpoints {
    ec2    = var.endpoint
    events = var.endpoint
    fis    = var.endpoint
    iam    = var.endpoint
    sqs    = var.endpoint
    ssm    = var.endpoint
    sts    = var.endpoint
  }

  default_tags {
    tags = { "spotguard:example" = "test-fleet" }
  }
}

data "aws_vpc" "default" {
  default = true
}

data "aws_subnets" "default" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default.id]
  }
  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

data "aws_ssm_parameter" "ami" {
  name = var.ami_ssm_parameter
}

module "fleet" {
  source = "../.."

  name               = var.name
  instance_count     = var.instance_count
  instance_type      = var.instance_type
  memory_mib         = var.memory_mib
  ami_id             = nonsensitive(data.aws_ssm_parameter.ami.value)
  vpc_id             = data.aws_vpc.default.id
  subnet_ids         = sort(data.aws_subnets.default.ids)
  spotguard_lock     = var.spotguard_lock
  spotguard_source   = var.spotguard_source
  config_toml        = var.config_toml
  user_data_template = var.user_data_template

  interruption_behavior = var.interruption_behavior
  drill_selection       = var.drill_selection
}
