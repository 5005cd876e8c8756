/**
 * AWS list prices in us-east-1 used by the cost benchmark (USD), as published on aws.amazon.com/pricing
 * for each service (read 2026-11). One table, so that a price change is one edit.
 */
export const AWS_PRICES = {
  /** Step Functions Standard: per state transition ($0.025 per 1,000). */
  stateTransition: 0.025 / 1000,
  /** Lambda on arm64: per GB-second, and per request ($0.20 per million). */
  lambdaGbSecondArm: 0.0000133334,
  lambdaRequest: 0.2 / 1e6,
  /** DynamoDB on demand: per write and per read request unit. */
  dynamoWriteUnit: 0.625 / 1e6,
  dynamoReadUnit: 0.125 / 1e6,
  /** S3 Standard: PUT, COPY, POST, LIST per request ($0.005 per 1,000); GET and others ($0.0004 per 1,000). */
  s3Put: 0.005 / 1000,
  s3Get: 0.0004 / 1000,
} as const;

/** S3 commands priced at the PUT/LIST rate; every other S3 command at the GET rate. */
export const S3_PUT_CLASS = new Set([
  'PutObjectCommand',
  'CreateMultipartUploadCommand',
  'UploadPartCommand',
  'CompleteMultipartUploadCommand',
  'ListObjectsCommand',
  'ListObjectsV2Command',
  'CopyObjectCommand',
]);
