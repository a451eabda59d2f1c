//! AdmissionReview decoding and answering, as the webhook's `POST /inject`
//! does it: `admission::decode`, then for a pod CREATE `mutate` (in a
//! namespace labelled `weft.io/inject=enabled`, the default config),
//! `admission::answer` and `admission::encode`; anything else is answered
//! `allow_unchanged`.
//!
//! Beyond "no panic": an `Inject` patch applies to the pod as it was given,
//! and the patched pod is injected (`is_injected`), so a second admission
//! would skip it.
#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use weft_api::consts::{INJECT_ENABLED, INJECT_KEY};
use weft_injector::admission::{self, Review};
use weft_injector::{Decision, InjectConfig, NamespaceInfo, is_injected, mutate};

fuzz_target!(|data: &[u8]| {
    let create = match admission::decode(data) {
        Ok(Review::PodCreate(create)) => create,
        Ok(Review::Other(request)) => {
            admission::encode(&admission::allow_unchanged(&request)).expect("encodes");
            return;
        }
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let namespace = NamespaceInfo {
        name: create.namespace.clone(),
        labels: BTreeMap::from([(INJECT_KEY.to_owned(), INJECT_ENABLED.to_owned())]),
        annotations: BTreeMap::new(),
    };
    let decision = mutate(&create.pod, &namespace, &InjectConfig::default());
    if let Decision::Inject(patch) = &decision {
        let mut pod = serde_json::to_value(&create.pod).expect("a pod serializes");
        json_patch::patch(&mut pod, patch).expect("the patch applies to the pod it was made for");
        let pod: Pod = serde_json::from_value(pod).expect("the patched pod is a pod");
        assert!(is_injected(&pod), "the patched pod is not marked injected");
    }
    // A patch that cannot be serialized is answered 500 by the webhook: not a panic.
    if let Ok((review, _outcome)) = admission::answer(&create.request, decision) {
        admission::encode(&review).expect("encodes");
    }
});
