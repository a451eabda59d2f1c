//! weft-controller: the mesh CA, the discovery and policy index, and the gRPC
//! API the proxies use. Built out by the identity and discovery issues.
