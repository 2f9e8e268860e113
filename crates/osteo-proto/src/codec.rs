//! The gRPC codec of the generated services: prost encoding, but a request that is not valid
//! protobuf is answered INVALID_ARGUMENT (the client sent it) instead of tonic-prost's INTERNAL.

use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// prost encoding with client decode errors mapped to INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ValidatingCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ValidatingCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ValidatingCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ValidatingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ValidatingDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// Decodes `U`; a malformed message is INVALID_ARGUMENT naming the message type, never echoing
/// its bytes.
#[derive(Debug, Clone)]
pub struct ValidatingDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ValidatingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            let name = std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("message");
            Status::invalid_argument(format!(
                "the message is not a valid protobuf {name}: {}; check that the sender was \
                 generated from proto/osteo/v1/osteo.proto",
                s.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
