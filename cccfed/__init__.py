"""Generated protobuf code for package cccfed.v1 (do not edit; see proto/)."""
