//! The `osteo.v1` gRPC contract and the Open Inference Protocol (`inference`, KServe v2):
//! messages, client and server stubs generated from `proto/`, plus the encoded file descriptor
//! set for server reflection.
#![deny(rust_2018_idioms)]

pub mod codec;

/// Generated types of package `osteo.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("osteo.v1");
}

/// Generated types of package `inference`: the Open Inference Protocol (KServe v2).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Encoded `FileDescriptorSet` of the contract (osteo.v1 and inference), for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/osteo_descriptor.bin"));

/// Full name of the osteo.v1 service.
pub const SERVICE: &str = "osteo.v1.OsteoService";

/// The methods of `osteo.v1.OsteoService`, in the order of the proto.
pub const METHODS: [&str; 9] = [
    "UploadStudy",
    "GradeStudy",
    "Classify",
    "Explain",
    "CompareBackends",
    "ListModels",
    "GetStudy",
    "DeleteStudy",
    "GetShadowReport",
];

/// Full name of the Open Inference Protocol service.
pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// The methods of `inference.GRPCInferenceService`, in the order of the proto.
pub const INFERENCE_METHODS: [&str; 12] = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
];

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;

    #[test]
    fn descriptor_set_describes_every_rpc() {
        let fds =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decodes");
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "osteo.v1")
            .expect("osteo.v1 present");
        let service = &file.service[0];
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, super::METHODS);
        assert_eq!(format!("osteo.v1.{}", service.name()), super::SERVICE);
        let upload = &service.method[0];
        assert!(upload.client_streaming() && !upload.server_streaming());
        let inference = fds
            .file
            .iter()
            .find(|f| f.package() == "inference")
            .expect("inference present");
        let service = &inference.service[0];
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, super::INFERENCE_METHODS);
        assert_eq!(
            format!("inference.{}", service.name()),
            super::INFERENCE_SERVICE
        );
    }

    #[test]
    fn every_message_field_enum_value_and_rpc_is_documented() {
        let fds =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decodes");
        let mut missing = Vec::new();
        for file in &fds.file {
            missing.extend(undocumented(file));
        }
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    /// The messages, fields, oneofs, enums, values, services and methods of `file` without a
    /// leading comment.
    fn undocumented(file: &prost_types::FileDescriptorProto) -> Vec<String> {
        let info = file
            .source_code_info
            .as_ref()
            .expect("source info kept for reflection");
        let documented: std::collections::HashSet<Vec<i32>> = info
            .location
            .iter()
            .filter(|l| l.leading_comments().trim().len() > 3)
            .map(|l| l.path.clone())
            .collect();
        let mut missing = Vec::new();
        let mut need = |path: Vec<i32>, name: String| {
            if !documented.contains(&path) {
                missing.push(name);
            }
        };
        for (i, m) in file.message_type.iter().enumerate() {
            let i = i as i32;
            need(vec![4, i], m.name().to_string());
            for (j, f) in m.field.iter().enumerate() {
                need(
                    vec![4, i, 2, j as i32],
                    format!("{}.{}", m.name(), f.name()),
                );
            }
            for (k, o) in m.oneof_decl.iter().enumerate() {
                if !o.name().starts_with('_') {
                    need(
                        vec![4, i, 8, k as i32],
                        format!("{}.{}", m.name(), o.name()),
                    );
                }
            }
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            need(vec![5, i as i32], e.name().to_string());
            for (j, v) in e.value.iter().enumerate() {
                need(
                    vec![5, i as i32, 2, j as i32],
                    format!("{}.{}", e.name(), v.name()),
                );
            }
        }
        for (i, svc) in file.service.iter().enumerate() {
            need(vec![6, i as i32], svc.name().to_string());
            for (m, method) in svc.method.iter().enumerate() {
                need(
                    vec![6, i as i32, 2, m as i32],
                    format!("{}.{}", svc.name(), method.name()),
                );
            }
        }
        missing
    }

    #[test]
    fn messages_round_trip_on_the_wire() {
        let req = v1::ClassifyRequest {
            study: Some(v1::StudyRef {
                source: Some(v1::study_ref::Source::Study("abc".into())),
            }),
            clinical: Some(v1::ClinicalVariables {
                age_years: 70.0,
                sex: v1::Sex::Female as i32,
                height_cm: 158.0,
                weight_kg: 55.0,
                bmi: None,
                smoker: Some(true),
                ..Default::default()
            }),
            model: "osteo-fused-v1".into(),
            backend: String::new(),
            clinical_from_dicom: false,
            dicom_outputs: false,
            fhir_outputs: false,
            model_version: String::new(),
        };
        let back = v1::ClassifyRequest::decode(req.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, req);
        assert_eq!(back.clinical.and_then(|c| c.smoker), Some(true));
    }
}
