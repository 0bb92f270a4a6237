//! Decoding OTLP request bodies: protobuf or JSON, optionally gzip/zstd-compressed, with size caps before
//! and after decompression. Shared by the HTTP receiver and the Kafka consumer.
