//! The one place where berth's error categories become gRPC status codes, as containerd's
//! `errdefs.ToGRPC` does, so clients' `IsNotFound`-style checks work unchanged.

use tonic::{Code, Status};

use crate::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = match &error {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_map_to_containerd_codes() {
        let s: Status = Error::NotFound("container \"a\"".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "container \"a\": not found");
        let s: Status = Error::AlreadyExists("namespace \"x\"".into()).into();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(Status::from(Error::FailedPrecondition("x".into())).code(), Code::FailedPrecondition);
        assert_eq!(Status::from(Error::InvalidArgument("x".into())).code(), Code::InvalidArgument);
        assert_eq!(Status::from(Error::Unauthenticated("x".into())).code(), Code::Unauthenticated);
    }
}
