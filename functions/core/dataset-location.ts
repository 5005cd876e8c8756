import { DatasetError } from './errors';

/** A dataset's place: a bucket and a key (an object, or, ending in `/`, a prefix of objects). */
export interface DatasetLocation {
  readonly bucket: string;
  readonly key: string;
}

/**
 * Reads what a user types as the dataset: `s3://bucket/key`, or a key relative to the work's bucket. The
 * key is taken as typed: an object's key, or a prefix when it ends in `/` (Register reads it exactly).
 * A dataset in another bucket is refused: the work's functions may read only their own bucket.
 *
 * autoStart hands over `detail.object.key` of S3's "Object Created" event as it comes through EventBridge,
 * and that key is the object's key itself, so it is never URL-decoded here: a space, a `+`, a `%` and
 * non-ASCII letters all mean themselves. AWS's documentation draws the line: S3's own notifications to
 * SNS, SQS and Lambda carry the key URL-encoded ("red flower.jpg" becomes "red+flower.jpg", S3 user guide,
 * "Event message structure", https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html),
 * while the EventBridge event structure lists `object.key` with no word of encoding (its detail field
 * list and examples carry the key as is)
 * (S3 user guide, "EventBridge event message structure",
 * https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html). moto's S3, which mirrors AWS,
 * sends `quote_plus(key)` to SNS/SQS/Lambda and the plain key to EventBridge.
 * Register still tries an autoStart key URL-decoded when no object has the key as it came (`eventKey`).
 * Only leading whitespace and trailing line breaks (a pasted value) are dropped: a key may end in a space.
 */
export function datasetLocation(dataset: string, workBucket: string): DatasetLocation {
  const text = dataset.replace(/^\s+/, '').replace(/[\r\n]+$/, '');
  if (text.length === 0)
    throw new DatasetError('The dataset is empty: give "s3://bucket/key" or a key in the work\'s bucket.');
  if (!text.startsWith('s3://')) {
    const key = text.replace(/^\/+/, '');
    if (key.length === 0)
      throw new DatasetError(`The dataset "${text}" names no key: give a key, or a prefix ending in "/".`);
    return { bucket: workBucket, key };
  }
  const rest = text.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash === -1 ? rest : rest.slice(0, slash);
  const key = slash === -1 ? '' : rest.slice(slash + 1);
  if (bucket !== workBucket) {
    throw new DatasetError(
      `The dataset ${text} is in bucket "${bucket}"; this work reads datasets from its own bucket "${workBucket}" only. Copy it there (for example under inputs/).`,
    );
  }
  if (key.length === 0) throw new DatasetError(`The dataset ${text} names a bucket but no key or prefix.`);
  return { bucket, key };
}
