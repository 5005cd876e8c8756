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
 */
export function datasetLocation(dataset: string, workBucket: string): DatasetLocation {
  const text = dataset.trim();
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
