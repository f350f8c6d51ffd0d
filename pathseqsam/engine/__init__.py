"""Glue between PathSeqSAM and MONAI/Ignite engines (batch preparation, handlers)."""
