//! Policy decoding: bytes as a `weft.v1` message (prost), then the checked
//! conversion to the policy model (`weft_api::policy`), as the proxy does with
//! what `Discovery.Watch` and `Inbound.Watch` send. The first byte picks the
//! message: 0 DestinationState, 1 InboundPolicy, 2 DiscoveryRequest,
//! 3 InboundRequest.
//!
//! Beyond "no panic": an accepted message, converted back to the wire and
//! again to the model, gives the same model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::policy::{DestinationState, DiscoveryRequest, InboundPolicy, InboundRequest};
use weft_api::proto::weft_v1 as pb;

fn round_trip<P, M>(bytes: &[u8])
where
    P: Message + Default,
    M: TryFrom<P> + PartialEq + std::fmt::Debug,
    for<'a> P: From<&'a M>,
{
    let Ok(wire) = P::decode(bytes) else {
        return;
    };
    let Ok(model) = M::try_from(wire) else {
        return;
    };
    let again = M::try_from(P::from(&model));
    match again {
        Ok(again) => assert_eq!(again, model, "the model changed through the wire"),
        Err(_) => panic!("{model:?} converted to the wire is refused"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => round_trip::<pb::DestinationState, DestinationState>(bytes),
        1 => round_trip::<pb::InboundPolicy, InboundPolicy>(bytes),
        2 => round_trip::<pb::DiscoveryRequest, DiscoveryRequest>(bytes),
        _ => round_trip::<pb::InboundRequest, InboundRequest>(bytes),
    }
});
