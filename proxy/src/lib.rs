//! weft-proxy: the data plane.
