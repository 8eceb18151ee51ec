variable "region" {
  description = "AWS region of the test fleet."
  type        = string
  default     = "us-east-1"
}

variable "endpoint" {
  description = "Send every AWS API call here instead of AWS, e.g. a moto server at http://127.0.0.1:5000. null: real AWS."
  type        = string
  default     = null

  validation {
    condition     = var.endpoint == null || can(regex("^https?://", var.endpoint))
    error_message = "endpoint must be null or an http(s) URL."
  }
}

variable "name" {
  description = "Name of the fleet (see the module)."
  type        = string
  default     = "spotguard-test"
}

variable "instance_count" {
  description = "How many hibernation-ready spot instances to run."
  type        = number
  default     = 2
}

variable "instance_type" {
  description = "A hibernation-capable instance type."
  type        = string
  default     = "m7i.large"
}

variable "memory_mib" {
  description = "RAM of instance_type in MiB; null reads it from DescribeInstanceTypes."
  type        = number
  default     = null
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter naming the AMI: the latest Amazon Linux 2023 by default."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "spotguard_lock" {
  description = "The exact release: a hash-pinned pip lock (cloud-init/lock.py), e.g. -var spotguard_lock=\"$(cat spotguard-0.1.0.lock)\"."
  type        = string
}

variable "spotguard_source" {
  description = "A package index URL, or a directory of wheels on the AMI."
  type        = string
  default     = "https://pypi.org/simple"
}

variable "config_toml" {
  description = "Extra spotguard TOML settings."
  type        = string
  default     = ""
}

variable "user_data_template" {
  description = "cloud-init template; null: the repository's cloud-init/user-data.yaml."
  type        = string
  default     = null
}

variable "interruption_behavior" {
  description = "hibernate (EC2 hibernates at once, no warning ahead) or stop (the warning comes durationBeforeInterruption ahead: drills spotguard's own hibernation)."
  type        = string
  default     = "hibernate"
}

variable "drill_selection" {
  description = "Which instances a drill interrupts: ALL, COUNT(n) or PERCENT(p)."
  type        = string
  default     = "ALL"
}
