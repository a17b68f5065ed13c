"""Generated from proto/cccfed/v1 by scripts/gen_proto.sh."""
