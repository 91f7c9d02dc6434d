//! protobuf for the policy stream with small initial buffers.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer up front; a control plane
//! holds a thousand idle streams, and its snapshots are a few KiB, so buffers start at 1 KiB and
//! grow only for the messages that need more.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

const INITIAL_BUFFER: usize = 1024;
/// tonic's default: how much is encoded before the encoder yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }
}
