//! Frame codec: encoding a Put request frame and decoding + validating it in place, as the node
//! does for every request (header decode, copy into an aligned buffer, rkyv validated access).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kvs_wire::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};
use kvs_wire::msg::{
    self, AlignedVec, ArchivedGetResponse, ArchivedPutRequest, Consistency, GetResponse,
    PutRequest, Stamp,
};
use kvs_wire::{FrameHeader, Opcode};

fn codec(c: &mut Criterion) {
    let put = PutRequest {
        key: b"k000000000000042".to_vec(),
        value: vec![b'.'; 100],
        ttl_ms: 0,
        consistency: Consistency::Default,
    };
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode_put_16B_key_100B_value", |b| {
        b.iter(|| {
            out.clear();
            msg::write_frame(&mut out, Opcode::Put, false, 7, black_box(&put)).unwrap();
            black_box(out.len())
        })
    });
    let mut frame = Vec::new();
    msg::write_frame(&mut frame, Opcode::Put, false, 7, &put).unwrap();
    let mut body: AlignedVec = AlignedVec::with_capacity(256);
    g.bench_function("decode_validate_put", |b| {
        b.iter(|| {
            let h = FrameHeader::decode(black_box(&frame), FRAME_BODY_BYTES_MAX).unwrap();
            body.clear();
            body.extend_from_slice(
                &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.body_len as usize],
            );
            let a = msg::access::<ArchivedPutRequest>(&body).unwrap();
            black_box(a.value.len() + a.key.len())
        })
    });
    let resp =
        GetResponse { value: Some(vec![b'.'; 100]), stamp: Some(Stamp { hlc: 1 << 40, node: 9 }) };
    let mut rframe = Vec::new();
    msg::write_frame(&mut rframe, Opcode::Get, true, 7, &resp).unwrap();
    g.bench_function("encode_decode_get_response", |b| {
        b.iter(|| {
            out.clear();
            msg::write_frame(&mut out, Opcode::Get, true, 7, black_box(&resp)).unwrap();
            body.clear();
            body.extend_from_slice(&out[FRAME_HEADER_BYTES..]);
            let a = msg::access::<ArchivedGetResponse>(&body).unwrap();
            black_box(a.value.is_some())
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
