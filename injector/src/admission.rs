//! AdmissionReview v1 at the edge: [`decode`] turns a request body into a
//! [`Review`] (a pod CREATE with its pod, or anything else), and [`answer`]
//! turns a [`Decision`] into the AdmissionReview response. No I/O here.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};

use crate::metrics::Outcome;
use crate::mutate::Decision;

/// A body that is not an AdmissionReview v1 request (answered 400 with the message).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not an AdmissionReview: {0}")]
    NotAReview(String),
    #[error(
        "the AdmissionReview has apiVersion {api_version:?} and kind {kind:?}; this webhook speaks \
         admission.k8s.io/v1 AdmissionReview (set admissionReviewVersions: [v1])"
    )]
    WrongVersion { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request {uid} is a pod CREATE without an object")]
    NoObject { uid: String },
    #[error("the object of AdmissionReview request {uid} is not a valid Pod: {reason}")]
    BadPod { uid: String, reason: String },
}

/// A decoded review.
pub enum Review {
    /// A pod CREATE: the one operation the webhook decides on.
    PodCreate(Box<PodCreate>),
    /// Anything else (another resource, another operation, a subresource): allowed unchanged.
    Other(Box<AdmissionRequest<DynamicObject>>),
}

/// A pod CREATE request.
pub struct PodCreate {
    pub request: Box<AdmissionRequest<DynamicObject>>,
    pub pod: Pod,
    /// The namespace the pod is created in (from the request; the pod's own
    /// `metadata.namespace` may be empty).
    pub namespace: String,
}

/// Decodes a request body.
pub fn decode(body: &[u8]) -> Result<Review, DecodeError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotAReview(e.to_string()))?;
    if review.types.api_version != META_API_VERSION_V1 || review.types.kind != META_KIND {
        return Err(DecodeError::WrongVersion {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let mut request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| DecodeError::NoRequest)?;
    let is_pod = request.kind.group.is_empty()
        && request.kind.version == "v1"
        && request.kind.kind == "Pod"
        && request
            .sub_resource
            .as_deref()
            .unwrap_or_default()
            .is_empty();
    if !is_pod || request.operation != Operation::Create {
        return Ok(Review::Other(Box::new(request)));
    }
    let object = request.object.take().ok_or_else(|| DecodeError::NoObject {
        uid: request.uid.clone(),
    })?;
    let bad_pod = |reason: String| DecodeError::BadPod {
        uid: request.uid.clone(),
        reason,
    };
    let value = serde_json::to_value(&object).map_err(|e| bad_pod(e.to_string()))?;
    let pod: Pod = serde_json::from_value(value).map_err(|e| bad_pod(e.to_string()))?;
    let namespace = request
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    Ok(Review::PodCreate(Box::new(PodCreate {
        request: Box::new(request),
        pod,
        namespace,
    })))
}

/// The response to a pod CREATE given the decision, and what to count.
pub fn answer(
    request: &AdmissionRequest<DynamicObject>,
    decision: Decision,
) -> Result<(AdmissionReview<DynamicObject>, Outcome), kube::core::admission::SerializePatchError> {
    let allowed = AdmissionResponse::from(request);
    let (response, outcome) = match decision {
        Decision::Inject(patch) => (allowed.with_patch(patch)?, Outcome::Injected),
        Decision::Skip(skipped) => {
            let outcome = Outcome::skipped(&skipped.reason);
            let response = match skipped.patch {
                Some(patch) => allowed.with_patch(patch)?,
                None => allowed,
            };
            (response, outcome)
        }
        Decision::Deny(message) => {
            let mut denied = allowed.deny(&message);
            denied.result.code = 403;
            denied.result.reason = "Forbidden".into();
            (denied, Outcome::Denied)
        }
    };
    Ok((response.into_review(), outcome))
}

/// The review as JSON, with the patch as the API server reads a `[]byte`:
/// base64 text (kube-core's own serialization writes an array of numbers).
pub fn encode(review: &AdmissionReview<DynamicObject>) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;
    let mut value = serde_json::to_value(review)?;
    if let Some(patch) = review.response.as_ref().and_then(|r| r.patch.as_ref()) {
        value["response"]["patch"] =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&value)
}

/// The response to a request the webhook does not decide on: allowed unchanged.
pub fn allow_unchanged(
    request: &AdmissionRequest<DynamicObject>,
) -> AdmissionReview<DynamicObject> {
    AdmissionResponse::from(request).into_review()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::{SkipReason, Skipped};

    const POD_CREATE: &str = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",
      "request":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind":{"group":"","version":"v1","kind":"Pod"},
        "resource":{"group":"","version":"v1","resource":"pods"},
        "namespace":"shop","operation":"CREATE",
        "userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},
        "object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-"},
          "spec":{"containers":[{"name":"web","image":"nginx"}]}},
        "oldObject":null,"dryRun":true}}"#;

    fn pod_create() -> PodCreate {
        match decode(POD_CREATE.as_bytes()).expect("decodes") {
            Review::PodCreate(create) => *create,
            Review::Other(_) => panic!("a pod CREATE"),
        }
    }

    #[test]
    fn decodes_a_pod_create_with_the_request_namespace() {
        let create = pod_create();
        assert_eq!(create.namespace, "shop");
        assert_eq!(create.request.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(create.request.dry_run);
        assert_eq!(create.pod.spec.expect("spec").containers[0].name, "web");
    }

    #[test]
    fn other_operations_and_resources_are_not_decided() {
        let update = POD_CREATE.replace("\"CREATE\"", "\"UPDATE\"");
        assert!(matches!(decode(update.as_bytes()), Ok(Review::Other(_))));
        let service = POD_CREATE
            .replace("\"kind\":\"Pod\"}", "\"kind\":\"Service\"}")
            .replace("\"resource\":\"pods\"", "\"resource\":\"services\"");
        assert!(matches!(decode(service.as_bytes()), Ok(Review::Other(_))));
    }

    #[test]
    fn malformed_bodies_are_named() {
        let not_json = decode(b"{").err().expect("refused").to_string();
        assert!(not_json.contains("not an AdmissionReview"), "{not_json}");
        let v1beta1 = POD_CREATE.replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
        let e = decode(v1beta1.as_bytes())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("admissionReviewVersions"), "{e}");
        let no_request = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#;
        assert!(matches!(
            decode(no_request.as_bytes()),
            Err(DecodeError::NoRequest)
        ));
        let bad_pod = POD_CREATE.replace("\"containers\":[", "\"containers\":[7,");
        let e = decode(bad_pod.as_bytes())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("not a valid Pod"), "{e}");
    }

    #[test]
    fn answers_deny_with_403_and_skip_with_its_patch() {
        let create = pod_create();
        let (review, outcome) =
            answer(&create.request, Decision::Deny("fix the ports".into())).expect("answer");
        assert_eq!(outcome, Outcome::Denied);
        let response = review.response.expect("response");
        assert!(!response.allowed);
        assert_eq!(response.uid, create.request.uid);
        assert_eq!(response.result.code, 403);
        assert_eq!(response.result.message, "fix the ports");

        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/metadata/annotations", "value": {"weft.io/skipped": "host-network"}}
        ]))
        .expect("patch");
        let skip = Decision::Skip(Skipped {
            reason: SkipReason::HostNetwork,
            patch: Some(patch.clone()),
        });
        let (review, outcome) = answer(&create.request, skip).expect("answer");
        assert_eq!(outcome, Outcome::Skipped("host-network"));
        let wire: serde_json::Value =
            serde_json::from_slice(&encode(&review).expect("encodes")).expect("JSON");
        assert_eq!(wire["response"]["allowed"], true);
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(wire["response"]["patch"].as_str().expect("base64 text"))
            .expect("base64");
        let sent: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSON patch");
        assert_eq!(sent, patch);
    }
}
