//! heed codecs for the records: a value is the protobuf encoding of its prost message, so the
//! on-disk format is exactly the one documented by the message definitions in `records.rs`.

use std::borrow::Cow;
use std::marker::PhantomData;

use heed::{BoxedError, BytesDecode, BytesEncode};
use prost::Message;

/// A table value stored as the protobuf encoding of the prost message `M`.
///
/// Only used as a type parameter of `heed::Database`; never constructed.
pub struct Proto<M>(PhantomData<M>);

impl<'a, M: Message + 'a> BytesEncode<'a> for Proto<M> {
    type EItem = M;

    fn bytes_encode(item: &'a M) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(item.encode_to_vec()))
    }
}

impl<'a, M: Message + Default + 'a> BytesDecode<'a> for Proto<M> {
    type DItem = M;

    fn bytes_decode(bytes: &'a [u8]) -> Result<M, BoxedError> {
        M::decode(bytes).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{Container, Runtime};

    #[test]
    fn round_trips_a_record() {
        let c = Container {
            id: "c1".into(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            labels: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let bytes = Proto::<Container>::bytes_encode(&c).unwrap();
        assert_eq!(Proto::<Container>::bytes_decode(&bytes).unwrap(), c);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        // Field 1 announced as a 100-byte string with nothing behind it.
        assert!(Proto::<Container>::bytes_decode(&[0x0a, 100]).is_err());
    }
}
