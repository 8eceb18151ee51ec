variable "name" {
  description = "Name of the fleet: prefixes every resource and is the value of the `spotguard:fleet` tag."
  type        = string
  default     = "spotguard-test"

  validation {
    # EC2 refuses security group names starting with "sg-".
    condition     = can(regex("^[a-z][a-z0-9-]{0,31}$", var.name)) && !startswith(var.name, "sg-")
    error_message = "name must be 1-32 characters: lower-case letters, digits and '-', starting with a letter but not with \"sg-\"."
  }
}

variable "instance_count" {
  description = "How many spot instances to run, each from its own persistent spot request."
  type        = number
  default     = 2

  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 20 && floor(var.instance_count) == var.instance_count
    error_message = "instance_count must be a whole number from 1 to 20."
  }
}

variable "instance_type" {
  description = "EC2 instance type. It must support hibernation (checked against DescribeInstanceTypes unless memory_mib is set)."
  type        = string
  default     = "m7i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9-]+$", var.instance_type))
    error_message = "instance_type must look like an EC2 instance type, e.g. m7i.large."
  }
}

variable "memory_mib" {
  description = "RAM of instance_type in MiB. null reads it from DescribeInstanceTypes; set it to skip that call (offline tests, local endpoints)."
  type        = number
  default     = null

  validation {
    # EC2 hibernation supports at most 150 GiB of RAM.
    condition     = var.memory_mib == null || (try(var.memory_mib > 0 && var.memory_mib <= 153600, false))
    error_message = "memory_mib must be null or 1..153600 (EC2 hibernates instances with at most 150 GiB of RAM)."
  }
}

variable "ami_id" {
  description = "AMI to launch. It must be a hibernation-capable image (e.g. Amazon Linux 2023) whose root device is root_device_name."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be an AMI id such as ami-0123456789abcdef0."
  }
}

variable "root_device_name" {
  description = "Root device name of the AMI: the volume that holds the OS and the hibernation image."
  type        = string
  default     = "/dev/xvda"

  validation {
    condition     = can(regex("^/dev/[a-z0-9]+$", var.root_device_name))
    error_message = "root_device_name must be a device path such as /dev/xvda."
  }
}

variable "os_disk_gib" {
  description = "Root volume space for the OS and software, in GiB; the swap file for the hibernation image is added on top."
  type        = number
  default     = 10

  validation {
    condition     = var.os_disk_gib >= 8 && var.os_disk_gib <= 1024 && floor(var.os_disk_gib) == var.os_disk_gib
    error_message = "os_disk_gib must be a whole number from 8 to 1024."
  }
}

variable "ebs_kms_key_id" {
  description = "ARN of a KMS key for the root volume. null uses the account's default EBS key; the volume is encrypted either way."
  type        = string
  default     = null

  validation {
    condition     = var.ebs_kms_key_id == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.ebs_kms_key_id))
    error_message = "ebs_kms_key_id must be null or a KMS key or alias ARN."
  }
}

variable "vpc_id" {
  description = "VPC for the fleet's security group."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id such as vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  description = "Subnets of vpc_id; instances are spread over them in order."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "subnet_ids must hold at least one subnet id such as subnet-0123456789abcdef0."
  }
}

variable "interruption_behavior" {
  description = "What EC2 does to an instance when it reclaims the spot capacity: hibernate (the point of spotguard) or stop."
  type        = string
  default     = "hibernate"

  validation {
    # terminate is left out on purpose: a persistent request needs stop or hibernate.
    condition     = contains(["hibernate", "stop"], var.interruption_behavior)
    error_message = "interruption_behavior must be hibernate or stop."
  }
}

variable "spot_max_price" {
  description = "Highest price per instance-hour in USD, as a decimal string. null caps it at the on-demand price."
  type        = string
  default     = null

  validation {
    condition     = var.spot_max_price == null || can(regex("^[0-9]+(\\.[0-9]+)?$", var.spot_max_price))
    error_message = "spot_max_price must be null or a decimal such as \"0.05\"."
  }
}

variable "metadata_hop_limit" {
  description = "IMDSv2 PUT response hop limit. Keep 1 unless the agent runs in a container, which needs 2."
  type        = number
  default     = 1

  validation {
    condition     = var.metadata_hop_limit >= 1 && var.metadata_hop_limit <= 64 && floor(var.metadata_hop_limit) == var.metadata_hop_limit
    error_message = "metadata_hop_limit must be a whole number from 1 to 64."
  }
}

variable "egress_cidr_blocks" {
  description = "IPv4 ranges the instances may reach on egress_ports (package mirrors, the EC2 API). Empty: no egress at all."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for cidr in var.egress_cidr_blocks : can(cidrnetmask(cidr))])
    error_message = "egress_cidr_blocks must hold IPv4 CIDR blocks such as 10.0.0.0/8."
  }
}

variable "egress_ports" {
  description = "TCP ports open towards egress_cidr_blocks. The metadata service and the VPC resolver need no rule."
  type        = list(number)
  default     = [443]

  validation {
    condition     = alltrue([for port in var.egress_ports : port >= 1 && port <= 65535 && floor(port) == port])
    error_message = "egress_ports must hold TCP port numbers from 1 to 65535."
  }
}

variable "user_data_template" {
  description = "Path of the cloud-init template rendered into the user data. null: cloud-init/user-data.yaml of this repository."
  type        = string
  default     = null
}

variable "spotguard_lock" {
  description = "The exact spotguard release to install: a pip lock of name==version --hash=sha256:HEX lines, spotguard's and every dependency's (cloud-init/lock.py writes one for a wheelhouse), e.g. file(\"spotguard-0.1.0.lock\"). Installed with pip --require-hashes: nothing floats."
  type        = string

  validation {
    condition = (
      length(regexall("(?m)^spotguard==\\S+ --hash=sha256:[0-9a-f]{64}", var.spotguard_lock)) == 1 &&
      alltrue([for line in split("\n", var.spotguard_lock) :
        can(regex("^([A-Za-z0-9._-]+==\\S+( --hash=sha256:[0-9a-f]{64})+|#.*|)$", trimspace(line)))
      ])
    )
    error_message = "spotguard_lock must pin spotguard==VERSION and every other line NAME==VERSION, each with --hash=sha256:HEX."
  }
}

variable "spotguard_source" {
  description = "Where spotguard-install takes the wheels spotguard_lock pins: a package index URL, or a directory of wheels on the image (offline)."
  type        = string
  default     = "https://pypi.org/simple"

  validation {
    condition     = can(regex("^(https?://|/)[^\\s]*$", var.spotguard_source))
    error_message = "spotguard_source must be an http(s) index URL or an absolute directory path."
  }
}

variable "hibernate_mode" {
  description = "spotguard's hibernate.mode: ec2 (StopInstances Hibernate=true), local (kernel path) or none."
  type        = string
  default     = "ec2"

  validation {
    condition     = contains(["ec2", "local", "none"], var.hibernate_mode)
    error_message = "hibernate_mode must be ec2, local or none."
  }
}

variable "imds_url" {
  description = "Metadata service URL the agent polls (imds.url)."
  type        = string
  default     = "http://169.254.169.254"

  validation {
    condition     = can(regex("^https?://[^\\s'\"]+$", var.imds_url))
    error_message = "imds_url must be an http:// or https:// URL."
  }
}

variable "config_toml" {
  description = "Extra spotguard TOML settings appended to /etc/spotguard/config.toml by cloud-init."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Tags for every resource, and for the instances, volumes and spot requests launched from the template."
  type        = map(string)
  default     = {}
}

variable "drills" {
  description = "Make the fleet drillable: an AWS FIS experiment template (and its role) that interrupts the fleet's spot instances, EventBridge rules carrying EC2's state changes and spotguard's own decisions to the queue, and the agents' permission and setting to publish them. false: only the fleet and EC2's notices in the queue."
  type        = bool
  default     = true
}

variable "drill_selection" {
  description = "Which of the fleet's running spot instances a drill interrupts: ALL, COUNT(n) or PERCENT(p) (FIS selection mode)."
  type        = string
  default     = "ALL"

  validation {
    condition     = can(regex("^(ALL|COUNT\\([1-9][0-9]*\\)|PERCENT\\(([1-9][0-9]?|100)\\))$", var.drill_selection))
    error_message = "drill_selection must be ALL, COUNT(n) with n >= 1, or PERCENT(p) with p from 1 to 100."
  }
}

variable "drill_duration_before_interruption" {
  description = "FIS durationBeforeInterruption: how long before the interruption the warning comes (instances that stop or terminate); PT2M to PT15M. Instances that hibernate on interruption start hibernating at once."
  type        = string
  default     = "PT2M"

  validation {
    condition     = can(regex("^PT([2-9]|1[0-5])M$", var.drill_duration_before_interruption))
    error_message = "drill_duration_before_interruption must be a whole number of minutes from PT2M to PT15M."
  }
}

variable "drill_stop_alarm_arn" {
  description = "ARN of a CloudWatch alarm that stops a running drill when it fires. null: no stop condition."
  type        = string
  default     = null

  validation {
    condition     = var.drill_stop_alarm_arn == null || can(regex("^arn:aws[a-z-]*:cloudwatch:[a-z0-9-]+:[0-9]{12}:alarm:.+$", var.drill_stop_alarm_arn))
    error_message = "drill_stop_alarm_arn must be null or a CloudWatch alarm ARN."
  }
}
