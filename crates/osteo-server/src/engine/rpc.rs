//! Every operation a front door can ask of the engine, by the gRPC method name that the audit
//! log, the metrics and the authentication layer record it under.

use crate::principal::{Principal, Role};

/// One operation, named as in osteo.v1 and the Open Inference Protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// osteo.v1 UploadStudy.
    UploadStudy,
    /// osteo.v1 GradeStudy.
    GradeStudy,
    /// osteo.v1 Classify.
    Classify,
    /// osteo.v1 Explain.
    Explain,
    /// osteo.v1 CompareBackends.
    CompareBackends,
    /// osteo.v1 ListModels.
    ListModels,
    /// osteo.v1 GetStudy.
    GetStudy,
    /// osteo.v1 DeleteStudy.
    DeleteStudy,
    /// osteo.v1 GetShadowReport.
    GetShadowReport,
    /// OIP ServerLive.
    ServerLive,
    /// OIP ServerReady.
    ServerReady,
    /// OIP ModelReady.
    ModelReady,
    /// OIP ServerMetadata.
    ServerMetadata,
    /// OIP ModelMetadata.
    ModelMetadata,
    /// OIP ModelInfer.
    ModelInfer,
    /// One request of an OIP ModelStreamInfer stream.
    ModelStreamInfer,
    /// Triton's ModelConfig.
    ModelConfig,
    /// Triton's ModelStatistics.
    ModelStatistics,
    /// Triton's RepositoryIndex.
    RepositoryIndex,
    /// Triton's RepositoryModelLoad (admin).
    RepositoryModelLoad,
    /// Triton's RepositoryModelUnload (admin).
    RepositoryModelUnload,
    /// gRPC server reflection.
    ServerReflectionInfo,
    /// A path that names no known method (never recorded as the client wrote it).
    Unknown,
}

/// The osteo.v1 methods, in the order of `osteo_proto::METHODS`.
const V1: [Rpc; 9] = [
    Rpc::UploadStudy,
    Rpc::GradeStudy,
    Rpc::Classify,
    Rpc::Explain,
    Rpc::CompareBackends,
    Rpc::ListModels,
    Rpc::GetStudy,
    Rpc::DeleteStudy,
    Rpc::GetShadowReport,
];

/// The Open Inference Protocol methods, in the order of `osteo_proto::INFERENCE_METHODS`.
const OIP: [Rpc; 12] = [
    Rpc::ServerLive,
    Rpc::ServerReady,
    Rpc::ModelReady,
    Rpc::ServerMetadata,
    Rpc::ModelMetadata,
    Rpc::ModelInfer,
    Rpc::ModelStreamInfer,
    Rpc::ModelConfig,
    Rpc::ModelStatistics,
    Rpc::RepositoryIndex,
    Rpc::RepositoryModelLoad,
    Rpc::RepositoryModelUnload,
];

impl Rpc {
    /// The method name (a bounded set: safe as a metric label and an audit field).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::UploadStudy => "UploadStudy",
            Rpc::GradeStudy => "GradeStudy",
            Rpc::Classify => "Classify",
            Rpc::Explain => "Explain",
            Rpc::CompareBackends => "CompareBackends",
            Rpc::ListModels => "ListModels",
            Rpc::GetStudy => "GetStudy",
            Rpc::DeleteStudy => "DeleteStudy",
            Rpc::GetShadowReport => "GetShadowReport",
            Rpc::ServerLive => "ServerLive",
            Rpc::ServerReady => "ServerReady",
            Rpc::ModelReady => "ModelReady",
            Rpc::ServerMetadata => "ServerMetadata",
            Rpc::ModelMetadata => "ModelMetadata",
            Rpc::ModelInfer => "ModelInfer",
            Rpc::ModelStreamInfer => "ModelStreamInfer",
            Rpc::ModelConfig => "ModelConfig",
            Rpc::ModelStatistics => "ModelStatistics",
            Rpc::RepositoryIndex => "RepositoryIndex",
            Rpc::RepositoryModelLoad => "RepositoryModelLoad",
            Rpc::RepositoryModelUnload => "RepositoryModelUnload",
            Rpc::ServerReflectionInfo => "ServerReflectionInfo",
            Rpc::Unknown => "unknown",
        }
    }

    /// Whether `p`'s roles allow this operation: clients may call everything (on their own
    /// studies) but the repository's load and unload, admins may list models, read the shadow
    /// report, read or delete any study, and load and unload models.
    pub fn allowed(self, p: &Principal) -> bool {
        match self {
            Rpc::ListModels | Rpc::GetStudy | Rpc::DeleteStudy | Rpc::GetShadowReport => {
                p.has(Role::Client) || p.has(Role::Admin)
            }
            Rpc::RepositoryModelLoad | Rpc::RepositoryModelUnload => p.has(Role::Admin),
            _ => p.has(Role::Client),
        }
    }

    /// Whether the operation runs a model (its outcome counts in the model's statistics).
    pub fn runs_a_model(self) -> bool {
        matches!(
            self,
            Rpc::Classify
                | Rpc::GradeStudy
                | Rpc::Explain
                | Rpc::CompareBackends
                | Rpc::ModelInfer
                | Rpc::ModelStreamInfer
        )
    }

    /// The operation of a gRPC request path (`/service/method`).
    pub fn of_grpc_path(path: &str) -> Rpc {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        let find = |names: &[&str], rpcs: &[Rpc]| {
            names
                .iter()
                .position(|m| *m == method)
                .and_then(|i| rpcs.get(i).copied())
                .unwrap_or(Rpc::Unknown)
        };
        match service {
            osteo_proto::SERVICE => find(&osteo_proto::METHODS, &V1),
            osteo_proto::INFERENCE_SERVICE => find(&osteo_proto::INFERENCE_METHODS, &OIP),
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
                Rpc::ServerReflectionInfo
            }
            _ => Rpc::Unknown,
        }
    }

    /// The operation an Open Inference Protocol REST path runs.
    pub fn of_rest_path(path: &str) -> Rpc {
        let segments: Vec<&str> = path.trim_matches('/').splitn(8, '/').collect();
        match segments.as_slice() {
            ["v2"] => Rpc::ServerMetadata,
            ["v2", "health", "live"] => Rpc::ServerLive,
            ["v2", "health", "ready"] => Rpc::ServerReady,
            ["v2", "repository", "index"] => Rpc::RepositoryIndex,
            ["v2", "repository", "models", _, "load"] => Rpc::RepositoryModelLoad,
            ["v2", "repository", "models", _, "unload"] => Rpc::RepositoryModelUnload,
            ["v2", "models", "stats"] => Rpc::ModelStatistics,
            ["v2", "models", rest @ ..] => match rest.last() {
                Some(&"infer") => Rpc::ModelInfer,
                Some(&"ready") => Rpc::ModelReady,
                Some(&"config") => Rpc::ModelConfig,
                Some(&"stats") => Rpc::ModelStatistics,
                _ => Rpc::ModelMetadata,
            },
            _ => Rpc::Unknown,
        }
    }
}

impl std::fmt::Display for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_tables_match_the_protocol_files() {
        for (name, rpc) in osteo_proto::METHODS.iter().zip(V1) {
            assert_eq!(*name, rpc.name());
        }
        for (name, rpc) in osteo_proto::INFERENCE_METHODS.iter().zip(OIP) {
            assert_eq!(*name, rpc.name());
        }
    }

    #[test]
    fn only_known_grpc_methods_are_named() {
        assert_eq!(
            Rpc::of_grpc_path("/osteo.v1.OsteoService/Classify"),
            Rpc::Classify
        );
        assert_eq!(
            Rpc::of_grpc_path("/inference.GRPCInferenceService/ModelInfer"),
            Rpc::ModelInfer
        );
        assert_eq!(
            Rpc::of_grpc_path("/osteo.v1.OsteoService/Evil\nline"),
            Rpc::Unknown
        );
        assert_eq!(Rpc::of_grpc_path("/x/y"), Rpc::Unknown);
        assert_eq!(Rpc::of_grpc_path(""), Rpc::Unknown);
    }

    #[test]
    fn rest_paths_are_named_as_the_grpc_method_they_run() {
        assert_eq!(Rpc::of_rest_path("/v2"), Rpc::ServerMetadata);
        assert_eq!(Rpc::of_rest_path("/v2/models/m/infer"), Rpc::ModelInfer);
        assert_eq!(
            Rpc::of_rest_path("/v2/models/m/versions/1/infer"),
            Rpc::ModelInfer
        );
        assert_eq!(
            Rpc::of_rest_path("/v2/models/m/versions/1"),
            Rpc::ModelMetadata
        );
        assert_eq!(Rpc::of_rest_path("/v2/models/stats"), Rpc::ModelStatistics);
        assert_eq!(
            Rpc::of_rest_path("/v2/repository/index"),
            Rpc::RepositoryIndex
        );
        assert_eq!(Rpc::of_rest_path("/etc/passwd"), Rpc::Unknown);
    }

    #[test]
    fn admins_list_and_manage_studies_but_do_not_grade() {
        let with = |name: &str, role| Principal {
            name: name.into(),
            roles: [role].into_iter().collect(),
        };
        let (admin, client) = (with("ops", Role::Admin), with("ris", Role::Client));
        assert!(Rpc::ListModels.allowed(&admin));
        assert!(Rpc::DeleteStudy.allowed(&admin));
        assert!(!Rpc::Classify.allowed(&admin));
        assert!(Rpc::Classify.allowed(&client));
        assert!(Rpc::GetStudy.allowed(&client));
    }
}
