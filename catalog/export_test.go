package catalog

// LookupWhere is the WHERE clause of the object look-up by address, per
// algorithm of the address asked for (for the plan test).
var LookupWhere = byEitherDigest

// LocationRank is the SQL form of LocationState.Rank (for the test that
// holds the two together).
const LocationRank = locationRank
