//! gRPC service `fulfil.v1.Fulfil` (being built).
