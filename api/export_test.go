package api

// LookupWhere is the WHERE clause of the object look-up by address, per
// algorithm of the address asked for (for the plan test).
var LookupWhere = byEitherDigest
